package cache

import (
	"encoding/binary"
	"math"
	"sync"

	"github.com/meshkit/mesh/pkg/bus"
)

// A GET is the request the cache serves most, and its cost is mostly the
// transport's: the reflection-based msgpack codec would add about a tenth.
// These functions read and write the msgpack forms of a GetRequest and a
// GetReply by hand. They accept exactly what the generic codec writes for
// these types; anything else (another field order, an extra field, JSON)
// takes the generic path, and FuzzFastPath checks that both read the same.

const fieldKey = "\xa3key"

// appendGetRequest appends the msgpack form of GetRequest{Key: key}.
func appendGetRequest(dst []byte, key string) []byte {
	dst = append(dst, 0x81)
	dst = append(dst, fieldKey...)
	return appendStr(dst, key)
}

// parseGetRequest reads the key of a msgpack GetRequest written as
// appendGetRequest writes it.
func parseGetRequest(b []byte) (string, bool) {
	if len(b) < 1+len(fieldKey) || b[0] != 0x81 || string(b[1:1+len(fieldKey)]) != fieldKey {
		return "", false
	}
	s, rest, ok := readStr(b[1+len(fieldKey):])
	if !ok || len(rest) != 0 {
		return "", false
	}
	return string(s), true
}

// appendGetReply appends the msgpack form of r, as the generic codec writes
// it (fields in declaration order, empty ones omitted).
func appendGetReply(dst []byte, r GetReply) []byte {
	n := byte(1)
	if len(r.Value) > 0 {
		n++
	}
	if r.TTLms != 0 {
		n++
	}
	dst = append(dst, 0x80|n, 0xa5, 'f', 'o', 'u', 'n', 'd')
	if r.Found {
		dst = append(dst, 0xc3)
	} else {
		dst = append(dst, 0xc2)
	}
	if len(r.Value) > 0 {
		dst = append(dst, 0xa5, 'v', 'a', 'l', 'u', 'e')
		dst = appendBin(dst, r.Value)
	}
	if r.TTLms != 0 {
		dst = append(dst, 0xa6, 't', 't', 'l', '_', 'm', 's', 0xd3)
		dst = binary.BigEndian.AppendUint64(dst, uint64(r.TTLms))
	}
	return dst
}

// parseGetReply reads a reply written by appendGetReply.
func parseGetReply(b []byte) (GetReply, bool) {
	r, rest, ok := readGetReply(b)
	return r, ok && len(rest) == 0
}

// readGetReply reads a reply written by appendGetReply at the start of b.
func readGetReply(b []byte) (r GetReply, rest []byte, ok bool) {
	if len(b) < 8 || b[0] < 0x81 || b[0] > 0x83 || string(b[1:7]) != "\xa5found" || (b[7] != 0xc2 && b[7] != 0xc3) {
		return r, nil, false
	}
	n := int(b[0]&0x0f) - 1 // fields after found
	r.Found = b[7] == 0xc3
	b = b[8:]
	if n > 0 && len(b) >= 6 && string(b[:6]) == "\xa5value" {
		v, rest, ok := readBin(b[6:])
		if !ok || len(v) == 0 {
			return r, nil, false
		}
		r.Value = v
		b = rest
		n--
	}
	if n > 0 {
		if len(b) < 16 || string(b[:8]) != "\xa6ttl_ms\xd3" {
			return r, nil, false
		}
		r.TTLms = int64(binary.BigEndian.Uint64(b[8:]))
		if r.TTLms == 0 {
			return r, nil, false
		}
		b = b[16:]
		n--
	}
	return r, b, n == 0
}

const (
	fieldKeys   = "\xa4keys"
	fieldValues = "\xa6values"
)

// appendMGetRequest appends the msgpack form of MGetRequest{Keys: keys}.
func appendMGetRequest(dst []byte, keys []string) []byte {
	dst = append(dst, 0x81)
	dst = append(dst, fieldKeys...)
	dst = appendArrayLen(dst, len(keys))
	for _, k := range keys {
		dst = appendStr(dst, k)
	}
	return dst
}

// parseMGetRequest reads the keys of a msgpack MGetRequest written as
// appendMGetRequest writes it.
func parseMGetRequest(b []byte) ([]string, bool) {
	var keys []string
	_, ok := eachMGetKey(b, func(n, i int, k []byte) bool {
		if keys == nil {
			keys = make([]string, n)
		}
		keys[i] = string(k)
		return true
	})
	return keys, ok
}

// eachMGetKey reads a msgpack MGetRequest written as appendMGetRequest
// writes it and calls f with the number of keys, the index and the bytes of
// each key in turn (b's memory), until f returns false. It returns the number
// of keys, and whether it read the whole request with f accepting every key.
func eachMGetKey(b []byte, f func(n, i int, k []byte) bool) (int, bool) {
	if len(b) < 1+len(fieldKeys) || b[0] != 0x81 || string(b[1:1+len(fieldKeys)]) != fieldKeys {
		return 0, false
	}
	n, b, ok := readArrayLen(b[1+len(fieldKeys):])
	if !ok || n > len(b) {
		return 0, false
	}
	for i := range n {
		var k []byte
		if k, b, ok = readStr(b); !ok || !f(n, i, k) {
			return n, false
		}
	}
	return n, len(b) == 0
}

// appendMGetReply appends the msgpack form of MGetReply{Values: vs}.
func appendMGetReply(dst []byte, vs []GetReply) []byte {
	dst = append(dst, 0x81)
	dst = append(dst, fieldValues...)
	dst = appendArrayLen(dst, len(vs))
	for _, v := range vs {
		dst = appendGetReply(dst, v)
	}
	return dst
}

// eachGetReply reads a reply written by appendMGetReply and calls f with
// the number of values, the index and each value in turn (its bytes are
// b's memory), until f returns false. It returns the number of values, and
// whether it read the whole reply with f accepting every value.
func eachGetReply(b []byte, f func(n, i int, r GetReply) bool) (int, bool) {
	if len(b) < 1+len(fieldValues) || b[0] != 0x81 || string(b[1:1+len(fieldValues)]) != fieldValues {
		return 0, false
	}
	n, b, ok := readArrayLen(b[1+len(fieldValues):])
	if !ok || n > len(b) {
		return 0, false
	}
	for i := range n {
		var r GetReply
		if r, b, ok = readGetReply(b); !ok || !f(n, i, r) {
			return n, false
		}
	}
	return n, len(b) == 0
}

func appendArrayLen(dst []byte, n int) []byte {
	if n < 16 {
		return append(dst, 0x90|byte(n))
	}
	if n <= math.MaxUint16 {
		return binary.BigEndian.AppendUint16(append(dst, 0xdc), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(dst, 0xdd), uint32(n))
}

// readArrayLen reads an array header in its shortest form up to array16.
func readArrayLen(b []byte) (n int, rest []byte, ok bool) {
	switch {
	case len(b) >= 1 && b[0]&0xf0 == 0x90:
		return int(b[0] & 0x0f), b[1:], true
	case len(b) >= 3 && b[0] == 0xdc:
		return int(binary.BigEndian.Uint16(b[1:])), b[3:], true
	}
	return 0, nil, false
}

func appendStr(dst []byte, s string) []byte {
	switch n := len(s); {
	case n < 32:
		dst = append(dst, 0xa0|byte(n))
	case n <= math.MaxUint8:
		dst = append(dst, 0xd9, byte(n))
	case n <= math.MaxUint16:
		dst = append(dst, 0xda)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0xdb)
		dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	}
	return append(dst, s...)
}

func appendBin(dst, v []byte) []byte {
	switch n := len(v); {
	case n <= math.MaxUint8:
		dst = append(dst, 0xc4, byte(n))
	case n <= math.MaxUint16:
		dst = append(dst, 0xc5)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, 0xc6)
		dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	}
	return append(dst, v...)
}

// readStr reads a str value in its shortest form, as the encoder writes it.
func readStr(b []byte) (s, rest []byte, ok bool) {
	if len(b) == 0 {
		return nil, nil, false
	}
	var n, h int
	switch c := b[0]; {
	case c >= 0xa0 && c <= 0xbf:
		n, h = int(c&0x1f), 1
	case c == 0xd9 && len(b) >= 2:
		n, h = int(b[1]), 2
	case c == 0xda && len(b) >= 3:
		n, h = int(binary.BigEndian.Uint16(b[1:])), 3
	default:
		return nil, nil, false
	}
	if len(b)-h < n {
		return nil, nil, false
	}
	return b[h : h+n], b[h+n:], true
}

// readBin reads a bin value (bin8, bin16 or bin32). The value shares b's
// memory: the client reads replies with it, and a reply's body is its own.
func readBin(b []byte) (v, rest []byte, ok bool) {
	if len(b) == 0 {
		return nil, nil, false
	}
	var n, h int
	switch c := b[0]; {
	case c == 0xc4 && len(b) >= 2:
		n, h = int(b[1]), 2
	case c == 0xc5 && len(b) >= 3:
		n, h = int(binary.BigEndian.Uint16(b[1:])), 3
	case c == 0xc6 && len(b) >= 5:
		n, h = int(binary.BigEndian.Uint32(b[1:])), 5
	default:
		return nil, nil, false
	}
	if n < 0 || len(b)-h < n {
		return nil, nil, false
	}
	return b[h : h+n : h+n], b[h+n:], true
}

// hitBufs are the buffers of msgpack replies (GET hits, MGETs) up to
// maxPooled bytes: reused, they spare the allocation and its garbage
// collection.
var hitBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

const maxPooled = 64 << 10

// appended is a msgpack reply written into a buffer, one of hitBufs when
// it is at most maxPooled bytes.
type appended struct {
	buf    *[]byte
	pooled bool
}

// appendReply is the reply that write appends to an empty buffer of at
// least size bytes.
func appendReply(size int, write func([]byte) []byte) appended {
	if size > maxPooled {
		b := write(make([]byte, 0, size))
		return appended{buf: &b}
	}
	b := hitBufs.Get().(*[]byte)
	*b = write((*b)[:0])
	return appended{buf: b, pooled: true}
}

// send answers c with the reply; a pooled buffer goes back to hitBufs once
// sent.
func (a appended) send(c *bus.Call) {
	if a.pooled {
		c.ReplyPooled(a.buf, &hitBufs)
		return
	}
	c.ReplyRaw(*a.buf)
}
