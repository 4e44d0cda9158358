"""Running a job in a worker: the runner, its delta writer, supervisor, cancel."""
