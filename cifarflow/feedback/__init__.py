"""Learning from use: reviewers' answers, the review queue, and their way into the training data."""
