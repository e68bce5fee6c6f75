package cache

import (
	"encoding/binary"
	"math"
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
	var r GetReply
	if len(b) < 7 || b[0] < 0x81 || b[0] > 0x83 || string(b[1:7]) != "\xa5found" {
		return r, false
	}
	n := int(b[0] & 0x0f)
	b = b[7:]
	if len(b) < 1 || (b[0] != 0xc2 && b[0] != 0xc3) {
		return r, false
	}
	r.Found = b[0] == 0xc3
	b = b[1:]
	n-- // fields left
	if n > 0 && len(b) >= 6 && string(b[:6]) == "\xa5value" {
		v, rest, ok := readBin(b[6:])
		if !ok || len(v) == 0 {
			return r, false
		}
		r.Value = v
		b = rest
		n--
	}
	if n > 0 {
		if len(b) != 16 || string(b[:8]) != "\xa6ttl_ms\xd3" {
			return r, false
		}
		r.TTLms = int64(binary.BigEndian.Uint64(b[8:]))
		if r.TTLms == 0 {
			return r, false
		}
		b = b[16:]
		n--
	}
	return r, n == 0 && len(b) == 0
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

// readBin reads a bin value (bin8, bin16 or bin32); the result is a copy.
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
	return append([]byte(nil), b[h:h+n]...), b[h+n:], true
}
