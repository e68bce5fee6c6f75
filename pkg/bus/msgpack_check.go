package bus

import (
	"encoding/binary"
	"fmt"
)

// MaxDepth bounds the nesting of a msgpack body: maps and arrays inside one
// another, the body's own map counting as one. A deeper body is refused
// before it is decoded, as a body nested a million deep (a MiB of 0x91
// bytes) would cost the decoder hundreds of MB. Requests nest 3 deep at most
// (a batch's items), so the bound only matters to opaque values such as a
// task's payload. JSON is bounded by encoding/json at 10,000 levels, which
// costs its scanner 80 KB at most and nothing else.
const MaxDepth = 100

// checkMsgpack walks a msgpack body without decoding it and fails if a
// header claims more than the body holds (an array or a map with more
// elements than bytes left, a string, bin or ext longer than the rest) or if
// it nests deeper than MaxDepth. The msgpack decoder allocates a slice of
// structs at the length its header claims (v5.4.1 applies no limit there),
// so a 10-byte body could otherwise make it allocate gigabytes. So what the
// decoder allocates is bounded by a small multiple of the body's length.
// Trailing bytes are left to the decoder.
func checkMsgpack(b []byte) error {
	_, err := scanMsgpack(b)
	return err
}

// scanMsgpack is checkMsgpack that also reports whether the body holds an
// integer that the decoder may wrap into a field of another sign: a
// negative one, or a uint64 (encoders write uint64 only above 2^32).
func scanMsgpack(b []byte) (signs bool, err error) {
	var (
		left  [MaxDepth + 1]int // values still to read in each open container; [0]: the body
		depth int               // open containers
		need  = 1               // values still to read in all
	)
	left[0] = 1
	for need > 0 {
		for left[depth] == 0 {
			depth--
		}
		if len(b) == 0 {
			return false, fmt.Errorf("msgpack: truncated body")
		}
		need--
		left[depth]--
		c := b[0]
		b = b[1:]
		var (
			items     int  // values nested in this one
			skip      int  // bytes of payload after the header
			container bool // a map or an array
		)
		switch {
		case c <= 0x7f: // positive fixint
		case c >= 0xe0: // negative fixint
			signs = true
		case c <= 0x8f: // fixmap
			items, container = 2*int(c&0x0f), true
		case c <= 0x9f: // fixarray
			items, container = int(c&0x0f), true
		case c <= 0xbf: // fixstr
			skip = int(c & 0x1f)
		default:
			if b, items, skip, err = msgpackHeader(c, b); err != nil {
				return false, err
			}
			container = c >= 0xdc
			signs = signs || c == 0xcf || (c >= 0xd0 && c <= 0xd3 && len(b) > 0 && b[0]&0x80 != 0)
		}
		if skip > len(b) {
			return false, fmt.Errorf("msgpack: a value claims %d bytes, %d are left", skip, len(b))
		}
		b = b[skip:]
		if container {
			if depth == MaxDepth {
				return false, fmt.Errorf("msgpack: nested deeper than %d levels", MaxDepth)
			}
			if items > 0 {
				depth++
				left[depth] = items
			}
		}
		need += items
		if need > len(b) {
			return false, fmt.Errorf("msgpack: %d values claimed, %d bytes left", need, len(b))
		}
	}
	return signs, nil
}

// msgpackHeader reads the rest of the header of code c (0xc0 to 0xdf) and
// returns what follows it, the values nested in it and its payload length.
func msgpackHeader(c byte, b []byte) (rest []byte, items, skip int, err error) {
	length := func(n int) (int, error) {
		if len(b) < n {
			return 0, fmt.Errorf("msgpack: truncated header")
		}
		var v uint64
		switch n {
		case 1:
			v = uint64(b[0])
		case 2:
			v = uint64(binary.BigEndian.Uint16(b))
		case 4:
			v = uint64(binary.BigEndian.Uint32(b))
		}
		b = b[n:]
		return int(v), nil
	}
	var n int
	switch c {
	case 0xc0, 0xc2, 0xc3: // nil, false, true
	case 0xc1:
		return nil, 0, 0, fmt.Errorf("msgpack: invalid code 0xc1")
	case 0xc4, 0xd9: // bin8, str8
		n, err = length(1)
		skip = n
	case 0xc5, 0xda: // bin16, str16
		n, err = length(2)
		skip = n
	case 0xc6, 0xdb: // bin32, str32
		n, err = length(4)
		skip = n
	case 0xc7, 0xc8, 0xc9: // ext8, ext16, ext32: length, type, data
		n, err = length(1 << (c - 0xc7))
		skip = n + 1
	case 0xca, 0xcb: // float32, float64
		skip = 4 << (c - 0xca)
	case 0xcc, 0xcd, 0xce, 0xcf: // uint8..uint64
		skip = 1 << (c - 0xcc)
	case 0xd0, 0xd1, 0xd2, 0xd3: // int8..int64
		skip = 1 << (c - 0xd0)
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext1..16: type, data
		skip = 1 + 1<<(c-0xd4)
	case 0xdc: // array16
		items, err = length(2)
	case 0xdd: // array32
		items, err = length(4)
	case 0xde: // map16
		n, err = length(2)
		items = 2 * n
	case 0xdf: // map32
		n, err = length(4)
		items = 2 * n
	}
	return b, items, skip, err
}
