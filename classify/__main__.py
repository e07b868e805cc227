from classify.cli import register
from common.cli.main import standalone

standalone(register, "classify")
