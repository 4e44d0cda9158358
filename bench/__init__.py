"""The benchmark suite of API.md section 12: fake upstream, load client, runner."""
