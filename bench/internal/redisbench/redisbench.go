// Package redisbench connects the benchmarks of bench/ to Redis the same
// way and describes the server for their tables.
package redisbench

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Client returns a go-redis client of poolSize connections whose reads
// and writes time out after timeout.
func Client(addr string, poolSize int, timeout time.Duration) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:            addr,
		PoolSize:        poolSize,
		ReadTimeout:     timeout,
		WriteTimeout:    timeout,
		DisableIdentity: true,
		// A Redis Cloud feature; off so that a local server logs nothing.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	})
}

// PID is the server's process id (INFO server), 0 when unknown.
func PID(ctx context.Context, rdb *redis.Client) int {
	info, err := rdb.Info(ctx, "server").Result()
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "process_id:"); ok {
			pid, _ := strconv.Atoi(v)
			return pid
		}
	}
	return 0
}

// Describe names the server's version and persistence settings.
func Describe(ctx context.Context, rdb *redis.Client, addr string) string {
	version := "unknown version"
	if info, err := rdb.Info(ctx, "server").Result(); err == nil {
		for line := range strings.SplitSeq(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				version = v
			}
		}
	}
	persist := []string{}
	for _, key := range []string{"save", "appendonly", "appendfsync"} {
		if m, err := rdb.ConfigGet(ctx, key).Result(); err == nil {
			persist = append(persist, fmt.Sprintf("%s %q", key, m[key]))
		}
	}
	return fmt.Sprintf("%s at %s (separate process; %s)", version, addr, strings.Join(persist, ", "))
}
