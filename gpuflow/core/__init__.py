"""What every step shares: errors and exit codes, the CLI harness, logging,
the one subprocess helper, atomic files, step records, retries and backups."""
