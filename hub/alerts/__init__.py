"""Alert stage: rules from device profiles, evaluated off the receive path, with lifecycle."""
