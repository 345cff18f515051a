"""
Amazon SQS for streamd: L{streamd.sqs.aws} builds, signs and parses requests with
botocore (no I/O); L{streamd.sqs.client} sends them with treq, retrying what is worth
retrying. The C{sqs} source (L{streamd.sources.sqs}) is built on the client; the
fakes for tests are in L{streamd.testing.sqs}.
"""
