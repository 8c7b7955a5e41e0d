"""Graph passes: plain functions Graph -> Graph, listed in order by the compile pipeline."""
