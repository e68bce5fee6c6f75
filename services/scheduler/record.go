package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HistoryStream keeps one record per task (its last outcome: failed,
// succeeded, dead, cancelled, or queued again by a requeue) on
// mesh.history.<queue>.<id>, the oldest going first past its bounds.
const HistoryStream = "MESH_TASK_HISTORY"

// HistorySubjectPrefix + queue + "." + id is a task's record.
const HistorySubjectPrefix = "mesh.history."

// HeaderRecordSeq on a task message is the sequence of the task's record
// when the message was published (a requeued task's queued record); a
// message without it expects no record.
const HeaderRecordSeq = "Mesh-Task-Record-Seq"

// taskSubject is a queued task's message: the record of a live task.
func taskSubject(queue, id string) string { return TaskSubjectPrefix + queue + "." + id }

// historySubject is a task's record in HistoryStream.
func historySubject(queue, id string) string { return HistorySubjectPrefix + queue + "." + id }

// readLast reads the last message of subject (wildcards allowed) in
// stream by a direct get. A subject without a message gives (nil, nil).
func readLast(ctx context.Context, nc *nats.Conn, stream, subject string) (*nats.Msg, error) {
	req, _ := json.Marshal(struct {
		LastBySubj string `json:"last_by_subj"`
	}{subject})
	m, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+stream, req)
	if err != nil {
		return nil, err
	}
	switch m.Header.Get("Status") {
	case "":
		return m, nil
	case "404":
		return nil, nil
	default:
		return nil, fmt.Errorf("scheduler: reading %s from %s: %s %s", subject, stream, m.Header.Get("Status"), m.Header.Get("Description"))
	}
}

// msgSeq is the stream sequence of a message read by readLast.
func msgSeq(m *nats.Msg) uint64 {
	seq, _ := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	return seq
}

// readRecord reads a task's record and its sequence; queue "" looks in
// every queue. A task without a record gives ok false (seq 0: the next
// write expects none).
func readRecord(ctx context.Context, nc *nats.Conn, queue, id string) (rec TaskInfo, seq uint64, ok bool, err error) {
	if queue == "" {
		queue = "*"
	}
	m, err := readLast(ctx, nc, HistoryStream, historySubject(queue, id))
	if err != nil || m == nil {
		return rec, 0, false, err
	}
	if err := json.Unmarshal(m.Data, &rec); err != nil {
		return rec, 0, false, fmt.Errorf("scheduler: the record of task %s is not JSON: %w", id, err)
	}
	return rec, msgSeq(m), true, nil
}

// recordMsg is the write of a task's record, compare-and-set: it is stored
// only if the task's last record is still expect (0: none).
func recordMsg(rec TaskInfo, expect uint64) (*nats.Msg, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(historySubject(rec.Queue, rec.ID))
	m.Data = b
	m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(expect, 10))
	return m, nil
}

// writtenFirst tells that a record's write was refused because another
// write of the task's record came first: read it and decide again.
func writtenFirst(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// liveTwin tells that a task's message was refused because a message of
// the same task is still in its queue: it expected none on its subject.
func liveTwin(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
