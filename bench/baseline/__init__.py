"""The textbook Powertools implementation the resender is measured against."""
