"""`python -m ledger` runs the command-line tool."""

from ledger.cli import main

if __name__ == "__main__":
    main()
