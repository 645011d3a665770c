"""Data the project makes or ships: grid intensities, chat tasks, offline local models."""
