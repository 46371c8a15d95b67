import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while starting up: quietly, as a shell expects
    sys.exit(130)

sys.exit(main())
