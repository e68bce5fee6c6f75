module github.com/meshkit/mesh/deploy

go 1.26.0

require (
	github.com/nats-io/nkeys v0.4.16
	golang.org/x/crypto v0.58.0
)

require golang.org/x/sys v0.49.0 // indirect
