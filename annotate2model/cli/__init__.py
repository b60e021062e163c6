"""The command line: parses arguments, calls one library function, renders with Rich."""
