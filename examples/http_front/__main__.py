"""``python -m examples.http_front --port 8080``."""

from examples.http_front.app import main

main()
