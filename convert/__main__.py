from common.cli import standalone
from convert.cli import register

standalone(register, "convert")
