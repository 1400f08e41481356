"""News: headlines, their sources and the sentiment scorer used by the news-sentiment agent."""
