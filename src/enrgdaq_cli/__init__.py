"""The `daq` command-line app: one module per subcommand; each parses, calls core, renders."""
