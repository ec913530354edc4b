"""Deploying FL jobs and reading their results: the class allow-list, site set-up, privacy scopes, results."""
