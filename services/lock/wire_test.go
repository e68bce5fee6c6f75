package lock_test

import (
	"testing"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/lock"
)

// Misspelt fields, wrong types and durations beyond their maximum are
// refused in both codecs with an error naming the field, and take no lock.
func TestStrictRequests(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL())
	nc := bustest.Connect(t, s.URL())
	for _, tc := range []struct {
		subject, body string
		is            error
		msg           string
	}{
		{lock.SubjectAcquire, `{"name":"s1","ttl":30000}`, bus.ErrUnknownField, "ttl: unknown field; did you mean ttl_ms?"},
		{lock.SubjectAcquire, `{"name":"s1","ttl_ms":30000,"wait":5000}`, bus.ErrUnknownField, "wait: unknown field; did you mean wait_ms?"},
		{lock.SubjectAcquire, `{"name":"s1","ttl_ms":30000,"limt":5}`, bus.ErrUnknownField, "limt: unknown field; did you mean limit?"},
		{lock.SubjectAcquire, `{"name":"s1","ttl_ms":"5s"}`, bus.ErrInvalid, "ttl_ms: expected an integer (milliseconds), got a string"},
		{lock.SubjectAcquire, `{"name":"s1","ttl_ms":30000,"deadline":5}`, bus.ErrInvalid, "deadline: expected an RFC 3339 string"},
		{lock.SubjectAcquire, `{"name":"s1","ttl_ms":9223372036855}`, lock.ErrInvalidTTL, "ttl_ms must be in [1000, 86400000], got 9223372036855"},
		{lock.SubjectAcquire, `{"name":"s1","ttl_ms":18446744073710}`, lock.ErrInvalidTTL, "ttl_ms must be in [1000, 86400000], got 18446744073710"},
		{lock.SubjectAcquire, `{"name":"s1","ttl_ms":30000,"wait_ms":3600001}`, lock.ErrInvalid, "wait_ms must be in [0, 3600000], got 3600001"},
		{lock.SubjectAcquire, `{"name":"s1","ttl_ms":30000,"wait_ms":9223372036855}`, lock.ErrInvalid, "wait_ms must be in [0, 3600000]"},
		{lock.SubjectRenew, `{"name":"s1","token":1,"ttl_ms":18446744073710}`, lock.ErrInvalidTTL, "ttl_ms must be in [1000, 86400000]"},
		{lock.SubjectRenew, `{"name":"s1","token":1,"ttl":1000}`, bus.ErrUnknownField, "ttl: unknown field; did you mean ttl_ms?"},
		{lock.SubjectRelease, `{"name":"s1","tokn":1}`, bus.ErrUnknownField, "tokn: unknown field; did you mean token?"},
		{lock.SubjectInspect, `{"nmae":"s1"}`, bus.ErrUnknownField, "nmae: unknown field; did you mean name?"},
		{lock.SubjectList, `{"prefx":"s"}`, bus.ErrUnknownField, "prefx: unknown field; did you mean prefix?"},
	} {
		bustest.Refused(t, nc, tc.subject, tc.body, tc.is, tc.msg)
	}
	list, err := lock.NewClient(nc).List(ctx(t), "")
	if err != nil || len(list.Locks) != 0 {
		t.Fatalf("refused requests took a lock: %+v, %v", list, err)
	}
}
