"""Many runs: search, comparison, reports and the demo."""
