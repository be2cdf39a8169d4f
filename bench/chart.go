package main

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"os"
	"strings"
)

// The chart is drawn with the standard library only: horizontal bars, and
// text in a small built-in 5x7 bitmap font (upper case, digits and a few
// signs).

var chartLabels = map[string]string{
	pathGRPCTCP:     "GRPC TCP",
	pathGRPCTLS:     "GRPC TLS (BASE)",
	pathQUICForward: "BRPC QUIC FWD",
	pathQUICReverse: "BRPC QUIC REV",
	pathTCPForward:  "BRPC TCP FWD",
	pathTCPReverse:  "BRPC TCP REV",
	pathRawQUIC:     "RAW QUIC-GO",
	idleQUIC:        "BRPC QUIC",
	idleTCP:         "BRPC TCP",
	idleGRPC:        "GRPC TLS",
}

var chartColors = map[string]color.RGBA{
	pathGRPCTCP:     {150, 150, 150, 255},
	pathGRPCTLS:     {80, 80, 80, 255},
	pathQUICForward: {40, 100, 200, 255},
	pathQUICReverse: {110, 160, 230, 255},
	pathTCPForward:  {40, 150, 70, 255},
	pathTCPReverse:  {120, 200, 130, 255},
	pathRawQUIC:     {230, 140, 30, 255},
	idleQUIC:        {40, 100, 200, 255},
	idleTCP:         {40, 150, 70, 255},
	idleGRPC:        {80, 80, 80, 255},
}

type bar struct {
	key   string
	value float64
	text  string
}

type panel struct {
	title    string
	bars     []bar
	baseline float64 // drawn as a thin line when positive
}

const (
	panelW   = 640
	panelH   = 270
	rowH     = 28
	labelW   = 200
	valueW   = 110
	fontZoom = 2
)

func (r *report) chartPanels() []panel {
	var panels []panel
	for _, m := range rpcMetrics {
		p := panel{title: chartTitle(r, m)}
		for _, ps := range r.paths {
			if !applies(ps, m) {
				continue
			}
			v, ok := r.value(ps.key, m)
			if !ok {
				continue
			}
			var text string
			switch m {
			case mLat16, mLat64K:
				v *= 1e6
				text = fmt.Sprintf("%.1f", v)
			case mCalls:
				text = fmt.Sprintf("%.0f", v)
			default:
				v /= 1e6
				text = fmt.Sprintf("%.0f", v)
			}
			if ps.key == baselinePath {
				p.baseline = v
			}
			p.bars = append(p.bars, bar{key: ps.key, value: v, text: text})
		}
		if len(p.bars) > 0 {
			panels = append(panels, p)
		}
	}
	if len(r.idle) > 0 {
		p := panel{title: fmt.Sprintf("SERVER KIB PER IDLE CLIENT (%d)", r.idle[0].clients)}
		for _, x := range r.idle {
			kib := x.bytesPerClient / 1024
			p.bars = append(p.bars, bar{key: x.kind, value: kib, text: fmt.Sprintf("%.1f", kib)})
		}
		panels = append(panels, p)
	}
	return panels
}

func chartTitle(r *report, m string) string {
	switch m {
	case mLat16:
		return "UNARY P50 16 B, US (LOWER IS BETTER)"
	case mLat64K:
		return "UNARY P50 64 KIB, US (LOWER IS BETTER)"
	case mCalls:
		return fmt.Sprintf("CALLS/S, %d CALLERS, 16 B", r.cfg.callers)
	case mBulkUnary:
		return fmt.Sprintf("MB/S, %s UNARY X%d", strings.ToUpper(sizeName(r.cfg.bulkSize)), r.cfg.bulkCallers)
	default:
		return fmt.Sprintf("MB/S, %s MESSAGES, 1 STREAM", strings.ToUpper(sizeName(r.cfg.bulkSize)))
	}
}

func writeChart(path string, r *report) error {
	panels := r.chartPanels()
	if len(panels) == 0 {
		return fmt.Errorf("nothing to draw")
	}
	cols := 2
	rows := (len(panels) + cols - 1) / cols
	img := image.NewRGBA(image.Rect(0, 0, cols*panelW, rows*panelH+30))
	draw.Draw(img, img.Bounds(), &image.Uniform{color.RGBA{255, 255, 255, 255}}, image.Point{}, draw.Src)
	drawText(img, 10, 8, "BRPC VS GRPC-GO, LOOPBACK, ONE RUN: "+strings.ToUpper(r.started.Format("2006-01-02")), color.RGBA{0, 0, 0, 255}, fontZoom)
	for i, p := range panels {
		x0 := (i % cols) * panelW
		y0 := 30 + (i/cols)*panelH
		drawPanel(img, x0, y0, p)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func drawPanel(img *image.RGBA, x0, y0 int, p panel) {
	black := color.RGBA{0, 0, 0, 255}
	frame := color.RGBA{210, 210, 210, 255}
	fillRect(img, image.Rect(x0+4, y0+4, x0+panelW-4, y0+panelH-4), frame)
	fillRect(img, image.Rect(x0+5, y0+5, x0+panelW-5, y0+panelH-5), color.RGBA{255, 255, 255, 255})
	drawText(img, x0+14, y0+14, p.title, black, fontZoom)
	maxV := 0.0
	for _, b := range p.bars {
		maxV = max(maxV, b.value)
	}
	if maxV <= 0 {
		maxV = 1
	}
	barArea := panelW - labelW - valueW - 20
	top := y0 + 44
	if p.baseline > 0 {
		// A dotted line at the baseline's value, under the bars and text.
		x := x0 + labelW + int(float64(barArea)*p.baseline/maxV)
		for y := top - 4; y < top+len(p.bars)*rowH; y += 4 {
			fillRect(img, image.Rect(x, y, x+1, y+2), color.RGBA{200, 0, 0, 255})
		}
	}
	for i, b := range p.bars {
		y := top + i*rowH
		drawText(img, x0+14, y+6, chartLabels[b.key], black, fontZoom)
		w := int(float64(barArea) * b.value / maxV)
		if w < 1 {
			w = 1
		}
		fillRect(img, image.Rect(x0+labelW, y+2, x0+labelW+w, y+rowH-4), chartColors[b.key])
		drawText(img, x0+labelW+w+6, y+6, b.text, black, fontZoom)
	}
}

func fillRect(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	draw.Draw(img, r, &image.Uniform{c}, image.Point{}, draw.Src)
}

// drawText writes s with the 5x7 font, each pixel zoom×zoom, top-left at
// (x, y). Lower case is drawn as upper case.
func drawText(img *image.RGBA, x, y int, s string, c color.RGBA, zoom int) {
	for _, ch := range strings.ToUpper(s) {
		g, ok := font5x7[ch]
		if !ok {
			g = font5x7['?']
		}
		for row, line := range g {
			for col, px := range line {
				if px == '#' {
					fillRect(img, image.Rect(x+col*zoom, y+row*zoom, x+(col+1)*zoom, y+(row+1)*zoom), c)
				}
			}
		}
		x += 6 * zoom
	}
}

var font5x7 = map[rune][7]string{
	' ': {".....", ".....", ".....", ".....", ".....", ".....", "....."},
	'A': {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"},
	'B': {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."},
	'C': {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."},
	'D': {"####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."},
	'E': {"#####", "#....", "#....", "####.", "#....", "#....", "#####"},
	'F': {"#####", "#....", "#....", "####.", "#....", "#....", "#...."},
	'G': {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"},
	'H': {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"},
	'I': {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'J': {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."},
	'K': {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"},
	'L': {"#....", "#....", "#....", "#....", "#....", "#....", "#####"},
	'M': {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"},
	'N': {"#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"},
	'O': {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."},
	'P': {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."},
	'Q': {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"},
	'R': {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"},
	'S': {".####", "#....", "#....", ".###.", "....#", "....#", "####."},
	'T': {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."},
	'U': {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."},
	'V': {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."},
	'W': {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."},
	'X': {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"},
	'Y': {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."},
	'Z': {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"},
	'0': {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."},
	'1': {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'2': {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"},
	'3': {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."},
	'4': {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."},
	'5': {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."},
	'6': {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."},
	'7': {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."},
	'8': {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."},
	'9': {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."},
	'.': {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."},
	',': {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."},
	'-': {".....", ".....", ".....", "#####", ".....", ".....", "....."},
	'(': {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."},
	')': {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."},
	'/': {".....", "....#", "...#.", "..#..", ".#...", "#....", "....."},
	':': {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."},
	'%': {"##..#", "##..#", "...#.", "..#..", ".#...", "#..##", "#..##"},
	'+': {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."},
	'?': {".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."},
}
