"""cdc-migrator."""
