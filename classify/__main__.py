from common.cli import standalone
from classify.cli import register

standalone(register, "classify")
