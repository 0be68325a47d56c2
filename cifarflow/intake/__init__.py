"""Images from outside the data set: one file decoded and fitted, an inbox screened, the report of a batch added."""
