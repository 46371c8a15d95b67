import signal
import sys

# Ctrl-C works however this process was started: a shell that runs a command
# in the background without job control (``cmd &`` in a script, some CI
# runners) starts it with SIGINT ignored. Installed first, so that a Ctrl-C
# while starting up is handled too.
signal.signal(signal.SIGINT, signal.default_int_handler)

try:
    from .cli import main

    status = main()
except KeyboardInterrupt:  # Ctrl-C while starting up: quietly, as a shell expects
    status = 130
sys.exit(status)
