set terminal pngcairo size 900,520
set output 'perf/results/feeds.png'
set title 'septa threat feeds: ns/packet vs feed entries (BPF_PROG_TEST_RUN)' noenhanced
set xlabel 'feed entries (0 drawn at 1)'
set ylabel 'ns/packet'
set key left top
set grid
set logscale x
set yrange [0:*]
plot for [i=2:6] 'perf/results/feeds.dat' using 1:i with linespoints lw 2 title columnheader(i)
