"""Geographic priors: which species can occur where."""
