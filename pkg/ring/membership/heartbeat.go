package membership

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meshkit/mesh/pkg/bus"
)

// Heartbeat is what a member publishes on mesh.heartbeat.<service>.<id>
// every interval, in JSON (msgpack is accepted too).
type Heartbeat struct {
	ID          string   `json:"id"`                     // the member, also the subject's last token
	Weight      float64  `json:"weight"`                 // relative capacity in [0, MaxWeight]; 0 means 1
	Version     string   `json:"version"`                // the member's service version
	Started     bus.Time `json:"started"`                // when the member started; a new value is a restart
	RingVersion string   `json:"ring_version,omitempty"` // the ring the member routes by, 16 hex digits
	IntervalMs  int64    `json:"interval_ms"`            // the member's heartbeat interval, in [MinInterval, MaxInterval]; 0: the watcher's
	Leave       bool     `json:"leave,omitempty"`        // a graceful stop: drop the member now
}

// Bounds of a heartbeat's fields: a heartbeat outside them is ignored (and
// logged), so that no single heartbeat can claim nearly every key (a huge
// weight) or stay in the ring for hours after its last word (a huge
// interval).
const (
	// MaxWeight bounds a member's weight: a member owns at most MaxWeight
	// times the share of a member of weight 1.
	MaxWeight = 100
	// MinInterval and MaxInterval bound a member's heartbeat interval.
	MinInterval = 100 * time.Millisecond
	MaxInterval = 60 * time.Second
)

// Subject is the heartbeat subject of a member.
func Subject(service, id string) string { return "mesh.heartbeat." + service + "." + id }

// ProbeSubject is where a new watcher asks every member of a service to
// answer with a heartbeat at once, instead of waiting for the next one.
func ProbeSubject(service string) string { return "mesh.heartbeat." + service }

// FormatVersion renders a ring version as on the wire.
func FormatVersion(v uint64) string { return fmt.Sprintf("%016x", v) }

// validToken reports whether s can be one subject token: not empty, no
// '.', no wildcard, no whitespace, at most 128 bytes.
func validToken(s string) bool {
	return s != "" && len(s) <= 128 && !strings.ContainsAny(s, ".*> \t\r\n")
}

func (h *Heartbeat) check(subjectID string) error {
	switch {
	case !validToken(h.ID):
		return fmt.Errorf("invalid member id %q", h.ID)
	case subjectID != "" && subjectID != h.ID:
		return fmt.Errorf("member id %q published on the subject of %q", h.ID, subjectID)
	case !(h.Weight >= 0 && h.Weight <= MaxWeight):
		return fmt.Errorf("member %q: weight %v is outside [0, %d]", h.ID, h.Weight, MaxWeight)
	case h.IntervalMs != 0 && (h.IntervalMs < MinInterval.Milliseconds() || h.IntervalMs > MaxInterval.Milliseconds()):
		return fmt.Errorf("member %q: interval_ms %d is outside [%d, %d]", h.ID, h.IntervalMs, MinInterval.Milliseconds(), MaxInterval.Milliseconds())
	case !utf8.ValidString(h.Version) || len(h.Version) > 64 || len(h.RingVersion) > 16:
		return fmt.Errorf("member %q: version or ring_version too long", h.ID)
	}
	return nil
}

// decodeHeartbeat decodes and checks a heartbeat received on subject.
func decodeHeartbeat(subjectID string, data []byte) (Heartbeat, error) {
	var h Heartbeat
	if err := bus.DetectCodec(nil, data).Unmarshal(data, &h); err != nil {
		return h, err
	}
	if len(data) == 0 {
		return h, errors.New("empty heartbeat")
	}
	return h, h.check(subjectID)
}
