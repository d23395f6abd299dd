set terminal pngcairo size 900,520
set output 'perf/results/tc_decision.png'
set title 'septa TC program: ns/packet vs policy + ipcache entries (BPF_PROG_TEST_RUN)' noenhanced
set xlabel 'entries in policy map and in ipcache (0 drawn at 1)'
set ylabel 'ns/packet'
set key left top
set grid
set logscale x
set yrange [0:*]
plot for [i=2:5] 'perf/results/tc_decision.dat' using 1:i with linespoints lw 2 title columnheader(i)
