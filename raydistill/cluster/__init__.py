"""The Ray layer: thin actors around the pure energy core. Importing this imports ray."""
