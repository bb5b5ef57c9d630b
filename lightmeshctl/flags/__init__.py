"""Each daemon's command-line flags, in one place per daemon: declared, read, turned into settings."""
