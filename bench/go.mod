module github.com/meshkit/mesh/bench

go 1.26.0

replace github.com/meshkit/mesh => ../

require (
	github.com/buraksezer/consistent v0.10.0 // indirect
	github.com/golang/groupcache v0.0.0-20241129210726-2c02b8208cf8 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	google.golang.org/protobuf v1.33.0 // indirect
)
