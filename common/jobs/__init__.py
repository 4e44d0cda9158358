"""The job: its record and store, its event log and the service the web uses."""
