"""The fleet console: folds the bridged health, alerts and LogLines of every device into one store."""
