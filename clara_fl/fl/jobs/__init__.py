"""Making and deploying FL jobs: job folders, the class allow-list, site set-up, privacy scopes, results."""
