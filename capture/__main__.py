from common.cli import standalone

from capture.cli import register

standalone(register, "capture")
