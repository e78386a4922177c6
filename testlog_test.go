package breakglass

import (
	"bytes"
	"sync"

	"github.com/caddy-break-glass/caddy-break-glass/bgtest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// logBuffer keeps the JSON lines a jsonLogger wrote.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) Sync() error { return nil }

// Logs reads what was written so far, with the kit's one log reader.
func (b *logBuffer) Logs() bgtest.Logs {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bgtest.ReadLogs(bytes.NewReader(b.buf.Bytes()))
}

// jsonLogger is a logger that writes JSON lines as Caddy's does (level,
// msg, fields), at every level, and what it wrote.
func jsonLogger() (*zap.Logger, *logBuffer) {
	b := &logBuffer{}
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{MessageKey: "msg", LevelKey: "level", NameKey: "logger",
		EncodeLevel: zapcore.LowercaseLevelEncoder, EncodeDuration: zapcore.StringDurationEncoder, EncodeTime: zapcore.RFC3339NanoTimeEncoder})
	return zap.New(zapcore.NewCore(enc, b, zapcore.DebugLevel)), b
}
