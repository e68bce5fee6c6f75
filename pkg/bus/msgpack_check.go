package bus

import (
	"encoding/binary"
	"fmt"
)

// checkMsgpack walks a msgpack body without decoding it and fails if a
// header claims more than the body holds: an array or a map with more
// elements than bytes left, a string, bin or ext longer than the rest. The
// msgpack decoder allocates a slice of structs at the length its header
// claims (v5.4.1 applies no limit there), so a 10-byte body could otherwise
// make it allocate gigabytes. Trailing bytes are left to the decoder.
func checkMsgpack(b []byte) error {
	need := 1 // values still to read
	for need > 0 {
		if len(b) == 0 {
			return fmt.Errorf("msgpack: truncated body")
		}
		need--
		c := b[0]
		b = b[1:]
		var (
			items int // values nested in this one
			skip  int // bytes of payload after the header
		)
		switch {
		case c <= 0x7f || c >= 0xe0: // fixint
		case c <= 0x8f: // fixmap
			items = 2 * int(c&0x0f)
		case c <= 0x9f: // fixarray
			items = int(c & 0x0f)
		case c <= 0xbf: // fixstr
			skip = int(c & 0x1f)
		default:
			var err error
			if b, items, skip, err = msgpackHeader(c, b); err != nil {
				return err
			}
		}
		if skip > len(b) {
			return fmt.Errorf("msgpack: a value claims %d bytes, %d are left", skip, len(b))
		}
		b = b[skip:]
		need += items
		if need > len(b) {
			return fmt.Errorf("msgpack: %d values claimed, %d bytes left", need, len(b))
		}
	}
	return nil
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
