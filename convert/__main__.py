from common.cli.main import standalone
from convert.cli import register

standalone(register, "convert")
