"""Input rules shared by the API, the CSV import and the commands."""

import re

SERIAL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9:_-]{0,63}$"
SERIAL_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9:_-]{0,63}\Z")
