from classify.cli import register
from common.cli import standalone

standalone(register, "classify")
