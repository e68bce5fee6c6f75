package scheduler_test

import (
	"testing"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
	"github.com/meshkit/mesh/services/scheduler"
)

// Misspelt fields, wrong types and durations beyond their maximum are
// refused in both codecs with an error naming the field, and create no
// task, queue or schedule.
func TestStrictRequests(t *testing.T) {
	s := bustest.RunServer(t)
	serve(t, s.URL(), scheduler.Config{})
	nc := bustest.Connect(t, s.URL())
	for _, tc := range []struct {
		subject, body string
		is            error
		msg           string
	}{
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","delay":5000}`, bus.ErrUnknownField, "delay: unknown field; did you mean delay_ms?"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","timeout":5000}`, bus.ErrUnknownField, "timeout: unknown field; did you mean timeout_ms?"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","retries":5}`, bus.ErrUnknownField, "retries: unknown field; did you mean max_retries?"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","backoff":{"kind":"constant","initial":5}}`, bus.ErrUnknownField, "backoff.initial: unknown field; did you mean initial_ms?"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","delay_ms":"5000"}`, bus.ErrInvalid, "delay_ms: expected an integer (milliseconds), got a string"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","max_retries":"3"}`, bus.ErrInvalid, "max_retries: expected an integer, got a string"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","delay_ms":9223372036855}`, scheduler.ErrInvalidSchedule, "delay_ms must be in [0, 31622400000], got 9223372036855"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","delay_ms":18446744073710}`, scheduler.ErrInvalidSchedule, "delay_ms must be in [0, 31622400000]"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","timeout_ms":86400001}`, scheduler.ErrInvalid, "timeout_ms must be 0 (the default) or in [10, 86400000], got 86400001"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","backoff":{"max_ms":9223372036855}}`, scheduler.ErrInvalid, "backoff.initial_ms and backoff.max_ms must be in [0, 86400000]"},
		{scheduler.SubjectSubmit, `{"queue":"strict","type":"t","unique_key":"u","unique_for_ms":18446744073710}`, scheduler.ErrInvalid, "unique_for_ms must be 0 (one hour) or in [1000, 31622400000]"},
		{scheduler.SubjectAddSched, `{"name":"strict","queue":"strict","type":"t","every":60000}`, bus.ErrUnknownField, "every: unknown field; did you mean every_ms?"},
		{scheduler.SubjectAddSched, `{"name":"strict","queue":"strict","type":"t","every_ms":9223372036000}`, scheduler.ErrInvalidSchedule, "every_ms must be whole seconds in [1000, 31622400000]"},
		{scheduler.SubjectStatus, `{"task":"x1"}`, bus.ErrUnknownField, "task: unknown field; the fields are id"},
		{scheduler.SubjectQueues, `{"queue":"strict"}`, bus.ErrUnknownField, "queue: unknown field; this request takes no fields"},
	} {
		bustest.Refused(t, nc, tc.subject, tc.body, tc.is, tc.msg)
	}
	c := client(t, s.URL())
	list, err := c.List(ctx(t), scheduler.ListRequest{})
	if err != nil || len(list.Tasks) != 0 {
		t.Fatalf("refused requests made tasks: %+v, %v", list, err)
	}
	if qs, err := c.Queues(ctx(t)); err != nil || len(qs) != 0 {
		t.Fatalf("refused requests made queues: %+v, %v", qs, err)
	}
	if ss, err := c.ListSchedules(ctx(t)); err != nil || len(ss) != 0 {
		t.Fatalf("refused requests made schedules: %+v, %v", ss, err)
	}
}
