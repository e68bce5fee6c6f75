package scheduler

// UniqueKey is the bucket key of a queue's unique key, for tests that
// write the bucket as a failed submit leaves it.
var UniqueKey = uniqueKey
