"""The concepts: manifest, image loading and checks, fetching from their sources."""
