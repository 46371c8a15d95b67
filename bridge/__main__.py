import sys

try:
    from .cli import main

    status = main()
except KeyboardInterrupt:  # Ctrl-C while starting up: quietly, as a shell expects
    status = 130
sys.exit(status)
