"""`python -m ledger` runs the command-line tool."""

from ledger import cli

if __name__ == "__main__":
    cli.run()
