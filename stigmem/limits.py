"""Size limits of the wire contract, in one place so validation, models and docs agree."""

# Entity URIs and sources are indexed; 512 characters keep every index entry under
# PostgreSQL's B-tree row limit even for 4-byte UTF-8.
MAX_URI_LENGTH = 512
MAX_RELATION_LENGTH = 256
MAX_STRING_BYTES = 4 * 1024
MAX_TEXT_BYTES = 64 * 1024
MAX_BATCH_FACTS = 1000
MAX_DERIVED_FROM = 100
QUERY_LIMIT_DEFAULT = 50
QUERY_LIMIT_MAX = 500
