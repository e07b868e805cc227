from common.cli.main import standalone

from capture.cli import register

standalone(register, "capture")
