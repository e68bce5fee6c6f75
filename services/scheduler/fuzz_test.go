package scheduler

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/bus/bustest"
)

// FuzzDecodeRequests: any body, in either codec, decodes into a request that
// passed validation, or fails with a 4xx; never a panic.
func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{
		`{"queue":"q","type":"t"}`, `{"queue":"q","type":"t","payload":"hi","delay_ms":5,"max_retries":0,"backoff":{"kind":"constant","initial_ms":10}}`,
		`{"queue":"q","type":"t","run_at":"2030-01-01T00:00:00.000Z","unique_key":"k","unique_for_ms":5000}`,
		`{"queue":"q","type":"t","payload":{"a":[1,2]}}`, `{"queue":"q","type":"t","payload":"aGk=","payload_encoding":"base64"}`,
		`{"id":"abc"}`, `{"id":"a.b"}`, `{"queue":"q","state":"dead","limit":5,"cursor":"x"}`,
		`{"name":"n","queue":"q","type":"t","cron":"0 * * * * *","time_zone":"Europe/Paris"}`, `{"name":"n","queue":"q","type":"t","every_ms":1000}`,
		`{"id":"x","queue":"q","type":"t","attempt":1,"stream_seq":3}`, `{"id":"x","queue":"q","attempt":2,"error":"boom","skip_retry":true}`,
		`{"queue":1}`, "\x82\xa5queue\xa1q\xa4type\xa1t", "\x81\xa7payload\xc4\x02\x00\xff", ``,
	} {
		f.Add([]byte(s))
	}
	for _, s := range []string{`{"queue":"q","type":"t","delay":5000}`, `{"id":"a","queue":"q","attempt":1,"stream_seq":0}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m := &bus.Msg{Msg: &nats.Msg{Data: data}, Codec: bus.DetectCodec(nil, data)}
		for _, req := range []any{&SubmitRequest{}, &StatusRequest{}, &CancelRequest{}, &ListRequest{}, &QueuesRequest{}, &PauseRequest{},
			&ScheduleRequest{}, &ScheduleListRequest{}, &ScheduleRmRequest{}, &StartedRequest{}, &FinishedRequest{}} {
			if !bustest.CheckDecoded(t, m, req, m.Decode(req)) {
				continue
			}
			switch r := req.(type) {
			case *SubmitRequest:
				if CheckQueue(r.Queue) != nil || checkType(r.Type) != nil || r.DelayMs < 0 || r.DelayMs > MaxDelayMs || r.TimeoutMs > MaxTimeoutMs || r.UniqueForMs > MaxDelayMs || (r.MaxRetries != nil && *r.MaxRetries < 0) || r.PayloadEncoding != "" {
					t.Fatalf("accepted %+v", r)
				}
			case *StatusRequest:
				if checkID(r.ID) != nil {
					t.Fatalf("accepted %+v", r)
				}
			case *ScheduleRequest:
				if checkName(r.Name) != nil || (r.Cron == "") == (r.EveryMs == 0) {
					t.Fatalf("accepted %+v", r)
				}
			case *FinishedRequest:
				if r.Attempt < 1 || checkID(r.ID) != nil || r.StreamSeq == 0 {
					t.Fatalf("accepted %+v", r)
				}
			}
		}
	})
}

// FuzzReports is a model check of the worker reports: a sequence of random
// reports (lines of the input: "s" + a started body, "f" + a finished body,
// either codec) is decided on a task in each state, as the service decides
// them. A report that does not match the task's delivery (its queue and
// type, its message at stream sequence 7, delivered, an attempt the
// consumer can have made and newer than the start last accepted; for an
// outcome, the start last accepted) must be refused with ErrStaleReport and
// change nothing.
func FuzzReports(f *testing.F) {
	for _, s := range []string{
		"s{\"id\":\"T\",\"queue\":\"q\",\"type\":\"t\",\"attempt\":1,\"stream_seq\":7}\nf{\"id\":\"T\",\"queue\":\"q\",\"attempt\":1,\"stream_seq\":7,\"result\":\"r\"}",
		"f{\"id\":\"T\",\"queue\":\"otherq\",\"attempt\":1,\"stream_seq\":999999,\"error\":\"\"}",
		"s{\"id\":\"T\",\"queue\":\"q\",\"type\":\"t\",\"attempt\":1000,\"stream_seq\":7}",
		"s{\"id\":\"T\",\"queue\":\"q\",\"type\":\"t\",\"attempt\":2,\"stream_seq\":7}\nf{\"id\":\"T\",\"queue\":\"q\",\"attempt\":2,\"stream_seq\":7,\"error\":\"x\"}\ns{\"id\":\"T\",\"queue\":\"q\",\"type\":\"t\",\"attempt\":3,\"stream_seq\":7}\nf{\"id\":\"T\",\"queue\":\"q\",\"attempt\":3,\"stream_seq\":7,\"interrupted\":true}",
		"f{\"id\":\"T\",\"queue\":\"q\",\"attempt\":1,\"stream_seq\":7,\"skip_retry\":true,\"error\":\"x\"}",
		"s\x85\xa2id\xa1T\xa5queue\xa1q\xa4type\xa1t\xa7attempt\x01\xaastream_seq\x07",
	} {
		f.Add([]byte(s))
	}
	const msgSeq, maxDeliver = 7, 10
	srv := &Server{}
	srv.cfg.defaults()
	base := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	fixtures := func() []record {
		task := func(state string, seq uint64, delivery int) record {
			return record{TaskInfo: TaskInfo{ID: "T", Queue: "q", Type: "t", State: state, MaxRetries: 3,
				StartedAt: bus.Time{Time: base.Add(-time.Minute)}}, Seq: seq, Delivery: delivery}
		}
		return []record{
			task(StateScheduled, 0, 0), task(StateQueued, 0, 0), task(StateQueued, msgSeq, 0),
			task(StateRunning, msgSeq, 1), task(StateFailed, msgSeq, 2), task(StateSucceeded, msgSeq, 1),
			task(StateCancelled, 0, 0), task(StateDead, msgSeq, 4),
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := bytes.Split(data, []byte("\n"))
		if len(lines) > 8 {
			lines = lines[:8]
		}
		for _, delivered := range []uint64{msgSeq - 1, msgSeq} {
			facts := consumerFacts{delivered: delivered, maxDeliver: maxDeliver, ackWait: 30 * time.Second}
			for _, rec := range fixtures() {
				last := rec.Delivery // the start last accepted, as the model sees it
				for i, line := range lines {
					if len(line) == 0 {
						continue
					}
					now := base.Add(time.Duration(i) * 20 * time.Second)
					m := &bus.Msg{Msg: &nats.Msg{Data: line[1:]}, Codec: bus.DetectCodec(nil, line[1:])}
					before := rec
					switch line[0] {
					case 's':
						r := new(StartedRequest)
						if m.Decode(r) != nil || r.ID != rec.ID {
							continue // refused at the edge, or another task (not found)
						}
						match := r.Queue == rec.Queue && r.Type == rec.Type && r.StreamSeq == msgSeq &&
							(terminal(rec.State) || r.StreamSeq <= facts.delivered && r.Attempt <= maxDeliver && r.Attempt > last &&
								(rec.State != StateRunning || now.Sub(rec.StartedAt.Time) >= facts.ackWait-skew))
						err := checkStart(&rec, r, facts, r.StreamSeq == msgSeq, now)
						if !match {
							if !errors.Is(err, ErrStaleReport) || !reflect.DeepEqual(rec, before) {
								t.Fatalf("start %+v on %+v (delivered %d): err %v, state %+v", r, before, delivered, err, rec)
							}
							continue
						}
						if err != nil {
							t.Fatalf("start %+v on %+v (delivered %d) refused: %v", r, before, delivered, err)
						}
						_, spent, err := start(&rec, r, now)
						switch {
						case spent:
							rec.State = StateDead // as kill does
						case err == nil:
							if rec.State != StateRunning || rec.Delivery != r.Attempt || rec.Seq != msgSeq {
								t.Fatalf("start %+v on %+v: state %+v", r, before, rec)
							}
							last = r.Attempt
						case !reflect.DeepEqual(rec, before):
							t.Fatalf("start %+v on %+v changed the state: %+v", r, before, rec)
						}
					case 'f':
						r := new(FinishedRequest)
						if m.Decode(r) != nil || r.ID != rec.ID {
							continue
						}
						match := r.Queue == rec.Queue && r.StreamSeq == msgSeq && last > 0 && r.Attempt == last
						err := checkFinish(&rec, r)
						if !match {
							if !errors.Is(err, ErrStaleReport) || !reflect.DeepEqual(rec, before) {
								t.Fatalf("outcome %+v on %+v: err %v, state %+v", r, before, err, rec)
							}
							continue
						}
						if err != nil {
							t.Fatalf("outcome %+v on %+v refused: %v", r, before, err)
						}
						_, final, _, err := srv.finish(&rec, r, now)
						switch {
						case final:
							rec.State = StateDead
						case err != nil && !reflect.DeepEqual(rec, before):
							t.Fatalf("outcome %+v on %+v changed the state: %+v", r, before, rec)
						case err == nil && before.State != StateRunning:
							t.Fatalf("outcome %+v on %+v: a task not running changed to %+v", r, before, rec)
						}
					}
				}
			}
		}
	})
}

// FuzzPayloadJSON: a msgpack payload that is not bytes becomes the JSON text
// json.Marshal writes for its decoded value, read as it streams.
func FuzzPayloadJSON(f *testing.F) {
	for _, s := range []string{"\x82\xa1a\x01\xa1b\x92\xc3\xc0", "\x93\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00\xd0\x80\xcf\xff\xff\xff\xff\xff\xff\xff\xff",
		"\x81\x01\x02", "\x82\xa1a\x01\xa1a\x02", "\x91\xc4\x02\x00\xff", "\x81\xa3<&>\xa2\xff\xfe", "\xca\x7f\xc0\x00\x00", "\xd6\xff\x00\x00\x00\x01"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var v any
		if bus.MsgPack.Unmarshal(data, &v) != nil {
			return
		}
		want, werr := json.Marshal(v)
		var buf bytes.Buffer
		dec := msgpack.NewDecoder(bytes.NewReader(data))
		err := appendJSON(&buf, dec)
		if err != nil {
			if werr == nil {
				if _, ok := v.(map[any]any); !ok {
					t.Logf("streaming refused what json.Marshal took: %v (%s)", err, want)
				}
			}
			return
		}
		if werr != nil {
			t.Fatalf("streaming wrote %s where json.Marshal failed: %v", buf.Bytes(), werr)
		}
		var a, b any
		if json.Unmarshal(buf.Bytes(), &a) != nil || json.Unmarshal(want, &b) != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("streaming wrote %s, json.Marshal %s", buf.Bytes(), want)
		}
	})
}
