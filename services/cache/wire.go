package cache

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"unicode/utf8"

	"github.com/vmihailenco/msgpack/v5"
	"github.com/vmihailenco/msgpack/v5/msgpcode"

	"github.com/meshkit/mesh/pkg/bus"
	"github.com/meshkit/mesh/pkg/ring"
)

// Subjects of the cache service. Any node answers the service subjects (the
// instances share them in a queue group); a node's own subjects are
// NodeSubject(id, op).
const (
	SubjectGet   = "mesh.cache.get"
	SubjectSet   = "mesh.cache.set"
	SubjectDel   = "mesh.cache.del"
	SubjectMGet  = "mesh.cache.mget"
	SubjectMSet  = "mesh.cache.mset"
	SubjectStats = "mesh.cache.stats"
)

// Operations, the last token of the subjects.
const (
	OpGet   = "get"
	OpSet   = "set"
	OpDel   = "del"
	OpMGet  = "mget"
	OpMSet  = "mset"
	OpStats = "stats"
	// OpIdentity answers with the node's heartbeat: the identity probe
	// that nodes and clients send a new member before they route keys
	// to it (package membership, IdentitySubject).
	OpIdentity = "identity"
)

// identitySubject is where node id answers identity probes.
func identitySubject(id string) string { return NodeSubject(id, OpIdentity) }

// NodeSubject is the subject of one node's operation: mesh.cache.node.<id>.<op>.
func NodeSubject(id, op string) string { return "mesh.cache.node." + id + "." + op }

// HeaderHop marks a request one node sends another; its value says why.
// A request that carries it is never forwarded again, so two nodes whose
// rings disagree cannot bounce a request between them.
const HeaderHop = "Mesh-Hop"

// Values of HeaderHop.
const (
	hopForward = "forward" // a node passes a request to the key's owner
	hopReplica = "replica" // the owner writes (or deletes) a copy on a replica
	hopHandoff = "handoff" // a new owner asks a previous owner for a key
)

// Limits checked at the edge.
const (
	MaxKeyLen = 1024 // bytes
	// MaxBatch bounds the keys of one mget or mset.
	MaxBatch = 1024
	// DefaultMaxValueBytes is Config.MaxValueBytes when left zero.
	DefaultMaxValueBytes = 1 << 20
	// MaxTTLms bounds ttl_ms: 366 days. A longer time to live is refused
	// rather than wrapped (milliseconds beyond 2^63 ns overflow a
	// time.Duration); 0 keeps a value until it is evicted or deleted.
	MaxTTLms = 366 * 24 * 3_600_000
)

// Errors of the cache service. Across the wire they are codes; the Client
// maps them back, so errors.Is works on either side.
var (
	// ErrNotFound: the key is not in the cache. The service answers a miss
	// with {"found": false}, not with an error; the Client returns this.
	ErrNotFound = bus.NewError(404, "not_found", "key not found")
	// ErrInvalidKey: empty, longer than MaxKeyLen, or not UTF-8.
	ErrInvalidKey = bus.NewError(400, "invalid_key", "invalid key")
	// ErrInvalidTTL: a ttl_ms outside [0, MaxTTLms].
	ErrInvalidTTL = bus.NewError(400, "invalid_ttl", "invalid ttl_ms")
	// ErrValueTooLarge: a value above the service's MaxValueBytes.
	ErrValueTooLarge = bus.NewError(413, "value_too_large", "value too large")
	// ErrInvalid: another field is wrong (an empty or oversized batch).
	ErrInvalid = bus.NewError(400, "invalid", "invalid request")
	// ErrUnavailable: the owner or a replica of a key did not answer.
	ErrUnavailable = bus.NewError(503, "unavailable", "cache node unavailable")
	// ErrLoader: the loader of a namespace failed.
	ErrLoader = bus.NewError(502, "loader_failed", "the loader failed")
)

var sentinels = []*bus.Error{ErrNotFound, ErrInvalidKey, ErrInvalidTTL, ErrValueTooLarge, ErrInvalid, ErrUnavailable, ErrLoader}

// Value is a cached value: any bytes. In msgpack it travels as bin (str is
// accepted too). In JSON it is a string when the bytes are UTF-8 text, as
// most cached values are, and {"base64": "..."} otherwise; a request may use
// either form. A decoded Value is nil only when the field was absent (or
// null in msgpack): an empty value is empty, not nil.
type Value []byte

type b64Value struct {
	Base64 string `json:"base64"`
}

// MarshalJSON implements json.Marshaler.
func (v Value) MarshalJSON() ([]byte, error) {
	if utf8.Valid(v) {
		return json.Marshal(string(v))
	}
	return json.Marshal(b64Value{base64.StdEncoding.EncodeToString(v)})
}

// present returns b as a Value that is not nil: a nil Value encodes as
// msgpack nil, which reads as a missing value.
func present(b []byte) Value {
	if b == nil {
		return Value{}
	}
	return b
}

// UnmarshalJSON implements json.Unmarshaler.
func (v *Value) UnmarshalJSON(b []byte) error {
	var s string
	if b[0] == '"' && json.Unmarshal(b, &s) == nil {
		*v = append(Value{}, s...)
		return nil
	}
	var o b64Value
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if b[0] != '{' || dec.Decode(&o) != nil {
		return errors.New(`expected a string or {"base64": "..."}`)
	}
	d, err := base64.StdEncoding.DecodeString(o.Base64)
	if err != nil {
		return errors.New("value: invalid base64")
	}
	*v = d
	return nil
}

// DecodeMsgpack implements msgpack.CustomDecoder: bin or str, or the map
// {"base64": "..."} that JSON uses for bytes that are not text.
func (v *Value) DecodeMsgpack(dec *msgpack.Decoder) error {
	c, err := dec.PeekCode()
	if err != nil {
		return err
	}
	if !msgpcode.IsFixedMap(c) && c != msgpcode.Map16 && c != msgpcode.Map32 {
		if !msgpcode.IsBin(c) && !msgpcode.IsString(c) && c != msgpcode.Nil {
			return errors.New(`expected bytes (bin), a string or {"base64": "..."}`)
		}
		b, err := dec.DecodeBytes()
		*v = b
		return err
	}
	var o b64Value
	if err := dec.Decode(&o); err != nil {
		return errors.New(`expected bytes (bin), a string or {"base64": "..."}`)
	}
	d, err := base64.StdEncoding.DecodeString(o.Base64)
	if err != nil {
		return errors.New("value: invalid base64")
	}
	*v = d
	return nil
}

// GetRequest reads a key.
type GetRequest struct {
	Key string `json:"key"`
}

// GetReply is a hit or a miss.
type GetReply struct {
	Found bool  `json:"found"`
	Value Value `json:"value,omitempty"`
	// TTLms is the time the value has left; 0: no expiry.
	TTLms int64 `json:"ttl_ms,omitempty"`
}

// value is the reply's value: nil for a miss, empty (not nil) for an empty
// value, which the wire form leaves out.
func (r GetReply) value() []byte {
	if r.Found && r.Value == nil {
		return []byte{}
	}
	return r.Value
}

// SetRequest writes a key.
type SetRequest struct {
	Key   string `json:"key"`
	Value Value  `json:"value"`
	TTLms int64  `json:"ttl_ms,omitempty"` // 0: no expiry
}

// SetReply confirms a write: the owner and Copies-1 replicas have it.
type SetReply struct {
	Copies int `json:"copies"`
}

// DelRequest removes a key.
type DelRequest struct {
	Key string `json:"key"`
}

// DelReply tells whether the owner had the key.
type DelReply struct {
	Deleted bool `json:"deleted"`
}

// MGetRequest reads several keys.
type MGetRequest struct {
	Keys []string `json:"keys"`
}

// MGetReply has one GetReply per requested key, in the request's order.
type MGetReply struct {
	Values []GetReply `json:"values"`
}

// MSetRequest writes several keys.
type MSetRequest struct {
	Items []SetRequest `json:"items"`
}

// MSetReply confirms a batch write.
type MSetReply struct {
	Stored int `json:"stored"`
}

// StatsRequest asks for the figures of every node.
type StatsRequest struct{}

// NodeStats are the figures of one node (or their sum).
type NodeStats struct {
	Node      string `json:"node,omitempty"`
	Hits      int64  `json:"hits"`
	Misses    int64  `json:"misses"`
	Loads     int64  `json:"loads"`     // values fetched by a loader
	Handoffs  int64  `json:"handoffs"`  // misses answered by a previous owner
	Forwards  int64  `json:"forwards"`  // requests passed to another node
	Evictions int64  `json:"evictions"` // entries dropped for room
	Items     int64  `json:"items"`
	Bytes     int64  `json:"bytes"` // the store's accounted size
	MaxBytes  int64  `json:"max_bytes"`
	Members   int    `json:"members,omitempty"` // nodes in this node's ring
	Ring      string `json:"ring_version,omitempty"`
	// Active hand-off (rebalancing): keys handed off to their holders and
	// acknowledged, keys received and stored, partitions held here whose
	// copy holders are not all known to hold them now, and how long the
	// last hand-off took. Rebalanced is the ring whose hand-off completed
	// last: when it is Ring and UnderReplicated is 0, every key this node
	// holds is on all its copy holders.
	HandedOff       int64  `json:"handed_off"`
	Received        int64  `json:"received"`
	UnderReplicated int64  `json:"under_replicated"`
	LastHandoffMs   int64  `json:"last_handoff_ms"`
	Rebalanced      string `json:"rebalanced_ring,omitempty"`
}

// StatsReply sums the figures of the nodes that answered.
type StatsReply struct {
	Total NodeStats   `json:"total"`
	Nodes []NodeStats `json:"nodes"`
}

// CheckKey reports whether key is a valid cache key.
func CheckKey(key string) error {
	switch {
	case key == "":
		return ErrInvalidKey.With("empty key")
	case len(key) > MaxKeyLen:
		return ErrInvalidKey.With("key of %d bytes exceeds %d", len(key), MaxKeyLen)
	case !utf8.ValidString(key):
		return ErrInvalidKey.With("key is not UTF-8")
	}
	return nil
}

func checkBatch(n int) error {
	if n == 0 || n > MaxBatch {
		return ErrInvalid.With("a batch holds 1 to %d keys, got %d", MaxBatch, n)
	}
	return nil
}

// Validate implements bus.Validator.
func (r *GetRequest) Validate() error { return CheckKey(r.Key) }

// Validate implements bus.Validator.
func (r *DelRequest) Validate() error { return CheckKey(r.Key) }

// Validate implements bus.Validator.
func (r *SetRequest) Validate() error {
	if err := CheckKey(r.Key); err != nil {
		return err
	}
	if r.Value == nil {
		return ErrInvalid.With("value is required (\"\" for an empty value)")
	}
	return checkTTL(r.TTLms)
}

// checkTTL checks a ttl_ms against [0, MaxTTLms].
func checkTTL(ms int64) error {
	if ms < 0 || ms > MaxTTLms {
		return ErrInvalidTTL.With("ttl_ms must be in [0, %d] (0: no expiry; at most 366 days), got %d", int64(MaxTTLms), ms)
	}
	return nil
}

// Validate implements bus.Validator.
func (r *MGetRequest) Validate() error {
	if err := checkBatch(len(r.Keys)); err != nil {
		return err
	}
	for _, k := range r.Keys {
		if err := CheckKey(k); err != nil {
			return err
		}
	}
	return nil
}

// Validate implements bus.Validator.
func (r *MSetRequest) Validate() error {
	if err := checkBatch(len(r.Items)); err != nil {
		return err
	}
	for i := range r.Items {
		if err := r.Items[i].Validate(); err != nil {
			return err
		}
	}
	return nil
}

// LoadRequest is what the owner of a key sends to its namespace's loader
// subject on a miss.
type LoadRequest struct {
	Key string `json:"key"`
}

// LoadReply is a loader's answer: the value and its TTL, or found false.
type LoadReply struct {
	Found bool  `json:"found"`
	Value Value `json:"value,omitempty"`
	TTLms int64 `json:"ttl_ms,omitempty"`
}

// Operations of the hand-off between nodes, on NodeSubject(id, op) only.
const (
	// OpPut stores copies a node hands off: each item is kept unless the
	// receiver holds the key at the same or a later version.
	OpPut = "put"
	// OpDigest returns a digest of each partition the receiver holds, so
	// that a copy holder can tell which partitions another lacks.
	OpDigest = "digest"
)

// PutItem is one copy handed off: the value, the time it has left and its
// version.
type PutItem struct {
	Key     string `json:"key"`
	Value   Value  `json:"value"`
	TTLms   int64  `json:"ttl_ms,omitempty"` // 0: no expiry
	Version uint64 `json:"version"`
}

// PutRequest hands copies off to a node that holds their keys.
type PutRequest struct {
	Items []PutItem `json:"items"`
}

// PutReply confirms a hand-off: every item is held at its version or a
// later one; Stored of them were written.
type PutReply struct {
	Stored int `json:"stored"`
}

// Validate implements bus.Validator.
func (r *PutRequest) Validate() error {
	if err := checkBatch(len(r.Items)); err != nil {
		return err
	}
	for _, it := range r.Items {
		if err := CheckKey(it.Key); err != nil {
			return err
		}
		if err := checkTTL(it.TTLms); err != nil {
			return err
		}
	}
	return nil
}

// DigestRequest asks a node for the digests of partitions. Digests, when
// given, are the asker's own, in the same order: a node that has keys of a
// partition whose digest the asker has empty sends them to it.
type DigestRequest struct {
	Partitions []int    `json:"partitions"`
	Digests    []Digest `json:"digests,omitempty"`
}

// Digest sums up the keys a node holds in one partition: how many, and the
// xor of a hash of each key with its version. Two nodes that hold the same
// keys at the same versions have the same digest.
type Digest struct {
	Keys int    `json:"keys"`
	Hash uint64 `json:"hash"`
}

// DigestReply has one Digest per requested partition, in order.
type DigestReply struct {
	Digests []Digest `json:"digests"`
}

// Validate implements bus.Validator.
func (r *DigestRequest) Validate() error {
	if len(r.Partitions) == 0 {
		return ErrInvalid.With("partitions is required (at least one)")
	}
	if len(r.Partitions) > ring.MaxPartitions {
		return ErrInvalid.With("at most %d partitions, got %d", ring.MaxPartitions, len(r.Partitions))
	}
	if len(r.Digests) != 0 && len(r.Digests) != len(r.Partitions) {
		return ErrInvalid.With("%d digests for %d partitions", len(r.Digests), len(r.Partitions))
	}
	for _, p := range r.Partitions {
		if p < 0 || p >= ring.MaxPartitions {
			return ErrInvalid.With("partition %d out of range", p)
		}
	}
	return nil
}
